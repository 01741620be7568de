"""What users call: end-to-end jobs built from the layers below."""
