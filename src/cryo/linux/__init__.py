"""The only package that talks to ctypes: syscalls, structs and constants of Linux x86_64."""
