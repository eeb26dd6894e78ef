from services.endpointd.service import EndpointService
from services.runtime.app import main

main(EndpointService)
