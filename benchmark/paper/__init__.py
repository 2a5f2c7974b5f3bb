"""Paper-reported reference numbers (ZePAD, Tables 1-7 and S1-S9) as data; see README.md here."""
