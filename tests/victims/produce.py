import sys

i = 0
while True:
    sys.stdout.write(f"{i}\n")
    i += 1
