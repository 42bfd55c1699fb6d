"""What every process writes about itself: JSON log lines."""
