"""The bridge: runs on the gaming PC, reads the game's Stats API socket, spools and posts.

It never imports server or stats code (checked by import-linter): it is all a gaming PC
needs, Windows included.
"""
