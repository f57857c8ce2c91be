from w2slab.cli import app

app()
