from services.routed.service import RoutedService
from services.runtime.app import main

main(RoutedService)
