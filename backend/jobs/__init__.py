"""What every job shares, whatever its method: the preset registry, the stage runner,
checkpoints, progress and the files a finished job leaves."""
