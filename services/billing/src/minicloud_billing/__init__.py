"""minicloud billing service: price catalog, accounts, budgets, charges and invoices."""
