"""Rich printers for command output (tables, panels): the CLI layer, kept out of the command files so they stay thin."""
