"""Similar-patient retrieval: patient vectors, the Chroma index (embedded or server), exact
k-NN, and the retrievers generators use."""
