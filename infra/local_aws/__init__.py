"""Local stand-ins for AWS, for development and tests (`wschat emulate`): never deployed."""
