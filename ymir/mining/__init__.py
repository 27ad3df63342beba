"""Mining algorithms: each scores a candidate image; a higher score means more worth labelling.

Every readable image gets a finite score >= 0; an unreadable one gets UNREADABLE_SCORE, below all of them.
"""
UNREADABLE_SCORE = -1.0
