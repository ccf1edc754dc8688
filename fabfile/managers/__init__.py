"""Process managers: how an app's processes (re)start and prove they run the new release."""
