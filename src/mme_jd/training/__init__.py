"""Training stages of MME-JD on the Hugging Face Trainer."""
