from animllm_cli.cli import main

main()
