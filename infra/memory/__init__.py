"""In memory, in this process: the default engine of `wschat serve`."""
