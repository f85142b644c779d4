"""Face swap: a profile's face into a photo, by insightface's inswapper (path A) or by
identity inpainting at the model's resolution (path B); see the README's Face swap section."""
