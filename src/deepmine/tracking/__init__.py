"""Everything that talks to MLflow. No other package of deepmine imports mlflow."""
