"""Model-card templates (and, later, Hub `custom_generate` folders) shipped with dynaspec-hf."""
