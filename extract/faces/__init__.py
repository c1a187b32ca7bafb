"""Everything about faces: finding them in photos, landmarks and chips, and the pretrained face networks."""
