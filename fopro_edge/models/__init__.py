from fopro_edge.models.student import EKDHeads as EKDHeads
from fopro_edge.models.student import Student as Student
from fopro_edge.models.student import build_student as build_student
from fopro_edge.models.teacher import FrozenTeacher as FrozenTeacher
from fopro_edge.models.teacher import build_teacher as build_teacher

__all__ = ["EKDHeads", "FrozenTeacher", "Student", "build_student", "build_teacher"]
