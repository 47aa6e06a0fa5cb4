"""Ed-Fi code shared by tap-edfi, target-edfi and edfi-sandbox."""
