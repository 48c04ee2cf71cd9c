"""The label set every served model must have."""

NEGATIVE = "NEGATIVE"
POSITIVE = "POSITIVE"
ID2LABEL = {0: NEGATIVE, 1: POSITIVE}
LABEL2ID = {label: index for index, label in ID2LABEL.items()}
