"""Transport tests: local, ssh (a real sshd on 127.0.0.1) and adb (an emulated client)."""
