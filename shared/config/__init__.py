"""Every setting, declared once (catalog), read by one reader per kind (readers), into one Settings (settings)."""
