"""Face perception: detection, alignment, landmarks, identity encoders, photo quality, face
parsing and masks."""
