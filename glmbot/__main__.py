from glmbot.cli.main import run

run()
