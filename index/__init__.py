"""skullsearch.index — see DESIGN.md §3; filled by later issues."""
