FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# REQUIREMENTS=gpu builds the CUDA image (docker-compose.gpu.yml); default: CPU.
ARG REQUIREMENTS=base
# torch comes from the CPU index here: PyPI's Linux wheel is a multi-GB CUDA build.
COPY requirements/ requirements/
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && pip install --no-cache-dir -r "requirements/${REQUIREMENTS}.txt"
# CTranslate2 finds the pip-installed CUDA libraries (gpu image) through this path.
ENV LD_LIBRARY_PATH=/usr/local/lib/python3.11/site-packages/nvidia/cublas/lib:/usr/local/lib/python3.11/site-packages/nvidia/cudnn/lib

COPY . .
RUN DJANGO_SECRET_KEY=build python manage.py collectstatic --noinput -v 0 \
 && DJANGO_SECRET_KEY=build python manage.py prepare_models

EXPOSE 8000 9091
# Healthy = alive: /health answers and the model works, whether or not the process is
# full or draining (monitoring/alive.py; /ready is the balancer's check).
HEALTHCHECK --interval=15s --timeout=10s --start-period=60s \
  CMD ["python", "-m", "monitoring.alive", "http://127.0.0.1:8000/health"]
# SIGTERM drains sessions (finals sent, closed 1012) within SHUTDOWN_GRACE_SECONDS.
STOPSIGNAL SIGTERM
CMD ["sh", "-c", "python manage.py migrate --noinput && exec python manage.py serve"]
