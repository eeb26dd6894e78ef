from services.flowd.service import FlowService
from services.runtime.app import main

main(FlowService)
