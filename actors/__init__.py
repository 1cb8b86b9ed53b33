"""Self-Instruct as Ray actors: proposers, a ROUGE-L pool, a classifier, instancers, a writer."""
