"""The library side of the verbs: what each ``dyncal`` verb computes, without parsing or printing."""
