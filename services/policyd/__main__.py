from services.policyd.service import PolicyService
from services.runtime.app import main

main(PolicyService)
