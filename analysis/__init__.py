"""What a sweep leaves for a reader: MLflow logging as it runs (`tracking`, `sweep_logger`,
`run_fields`, `mlflow_store`), replay from Ray storage (`sync`), the tables rebuilt from MLflow
(`records` -> `summary` -> `cells`, written by `table`; `fusion_table`) and the plots.
"""
