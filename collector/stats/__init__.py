"""Match statistics: what the game and plugins send (formats), and the stats store."""
