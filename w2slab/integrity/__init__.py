"""Research integrity: hardened dev feedback, probe detection, submission audits and a red-team
suite. See README.md in this folder."""
