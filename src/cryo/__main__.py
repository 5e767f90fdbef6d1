from cryo.cli import console

console()
