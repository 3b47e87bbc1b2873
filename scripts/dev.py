print("make dev: the services are not implemented yet")
