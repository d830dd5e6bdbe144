"""Kids/adults age groups: the UTKFace-trained model and the tags it gives FER2013+ faces."""
