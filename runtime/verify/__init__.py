"""The contract gate: read an .mlpackage without CoreML (observe), check it against the spec's
contracts (check), and execute it with a numpy reference interpreter (interp) for parity."""
