from bench.report.tables import main

main()
