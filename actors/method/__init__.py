"""The method's rules, pure: prompts, parsing, filters, ROUGE-L, the stage logic."""
