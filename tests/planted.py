"""The planted facts retrieval and evaluate are tested (and benchmarked) on: eight made-up
documents, paraphrased questions and exact-term questions."""


# Eight small documents with facts no model has seen. Every one also names a complaints desk
# whose code differs from the others only in the order of its digits: an exact term that BM25
# matches and an embedding blurs.
DESKS = {"harbor.md": "KD-4471", "orchard.md": "KD-4417", "library.md": "KD-4714", "bakery.md": "KD-7441",
         "railway.md": "KD-1447", "choir.md": "KD-4147", "festival.md": "KD-7144", "clinic.md": "KD-1744"}
DOCUMENTS = {
    "harbor.md": "The harbour of Velmora opens at dawn and closes when the signal lamp on the north pier is lit.\n\n"
                 "Ships longer than forty metres must be guided in by a pilot boat.\n\n"
                 "The harbour master is elected every four years by the guild of net makers.",
    "orchard.md": "The Brannock orchard grows a pear called the winter moon, which ripens only after the first frost.\n\n"
                  "Picking is done by hand at night, because the cold keeps the fruit firm.\n\n"
                  "Trees older than sixty years are marked with a blue ribbon and never pruned.",
    "library.md": "The Ostrel library lends books for nineteen days; a late book costs one copper coin for each day.\n\n"
                  "Maps and charts may not leave the reading room.\n\n"
                  "The library was rebuilt in stone after the great fire that destroyed the timber hall.",
    "bakery.md": "At the Kettering bakery the sourdough starter is fed with rye flour twice a day.\n\n"
                 "Loaves are baked in a wood oven heated with beech logs, never pine, which leaves a bitter taste.\n\n"
                 "Unsold bread is given to the shelter on Mill Street each evening.",
    "railway.md": "The Dunmere mountain railway climbs eleven hundred metres on a rack track.\n\n"
                  "Its engines run on steam in summer and on electricity in winter, when the boilers freeze.\n\n"
                  "Season passes are sold at the valley station only.",
    "choir.md": "The Hallam choir rehearses on Thursday evenings in the old chapel.\n\n"
                "New singers audition by performing a folk song of their own choosing, without accompaniment.\n\n"
                "The choir's oldest member has sung with it for fifty-two years.",
    "festival.md": "The Zorblat lantern festival takes place in Quenmoor in the ninth month of every year.\n\n"
                   "Each household floats a paper lantern on the river to remember those who left the town.\n\n"
                   "Stalls at the festival need a permit from the town clerk.",
    "clinic.md": "The Penrith clinic treats walk-in patients every morning until noon.\n\n"
                 "Vaccinations for children are free; adults pay a fee of three silver coins.\n\n"
                 "After noon only patients with an appointment are seen.",
}
TOPICS = {"harbor.md": "harbour", "orchard.md": "orchard", "library.md": "library", "bakery.md": "bakery",
          "railway.md": "railway", "choir.md": "choir", "festival.md": "festival", "clinic.md": "clinic"}
DOCUMENTS = {name: f"{text}\n\nComplaints about the {TOPICS[name]} are handled at desk {DESKS[name]} of the town hall."
             for name, text in DOCUMENTS.items()}
# Paraphrases: few words in common with the text they are answered by.
PARAPHRASES = [
    {"question": "When do the gates for boats shut in Velmora?", "answer": "When the signal lamp on the north pier is lit.", "source": "harbor.md"},
    {"question": "Which fruit only becomes ripe once it has frozen outside?", "answer": "The winter moon pear.", "source": "orchard.md"},
    {"question": "How long can I borrow a novel from Ostrel's book collection?", "answer": "Nineteen days.", "source": "library.md"},
    {"question": "What kind of firewood is used for baking the loaves?", "answer": "Beech logs.", "source": "bakery.md"},
    {"question": "Why do the trains switch power source when it is cold?", "answer": "The boilers freeze in winter.", "source": "railway.md"},
    {"question": "What must someone sing to join the singing group?", "answer": "A folk song of their own choosing.", "source": "choir.md"},
    {"question": "How much do grown-ups pay for an injection at the medical centre?", "answer": "Three silver coins.", "source": "clinic.md"},
]
EXACT_TERMS = [{"question": f"Which complaints does desk {code} handle?", "answer": f"Complaints about the {TOPICS[name]}.",
                "source": name} for name, code in DESKS.items()]
QUESTIONS = PARAPHRASES + EXACT_TERMS


# Small chunks, so that a document is several chunks and retrieval has to choose among them.
CHUNKING = {"max_tokens": 25, "overlap": 5}


def write_documents(directory):
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in DOCUMENTS.items():
        (directory / name).write_text(text)
    return directory
