"""Flight recordings off the robots: MCAP segments turned into training data."""
