"""Face perception: detection, alignment, landmarks, identity encoders, photo quality."""
