"""Every ``%crush`` line command. Importing the package registers them all."""
