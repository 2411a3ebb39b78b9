"""SavedModel export and inference."""
