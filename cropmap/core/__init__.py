"""What every stage shares: the user-error type, flag types and the runner, atomic files, the data root's
names, the classes, the device rule and the one metric. Imports nothing else of the project."""
