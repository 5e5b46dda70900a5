FROM python:3.11-slim
WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY requirements.txt constraints.txt ./
RUN pip install --no-cache-dir -r requirements.txt -c constraints.txt
COPY . .
USER nobody
EXPOSE 8000 5555
CMD ["gunicorn", "-c", "api/gunicorn_conf.py", "api:create_app()"]
