-- Databases of the labelloop stack (docker-compose.yml runs this once; infra/stack.sh uses createdb).
CREATE DATABASE labelloop_prefect;
CREATE DATABASE labelloop_mlflow;
