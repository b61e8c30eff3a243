"""Subjects of the multiple-choice benchmarks, as data (written here from the benchmarks' public lists).

C-Eval: 52 subjects, each with its Chinese name (used in the prompt, as C-Eval's own prompt does)
and one of four categories; C-Eval-Hard is 8 of the STEM subjects. MMLU's 57 and CMMLU's 67
subject names are what their official folders and hub configs are called; local folders are read
by file name, so these lists matter only for loading from the hub.
"""
from __future__ import annotations

STEM, SOCIAL, HUMANITIES, OTHER = "STEM", "Social Science", "Humanities", "Other"

# subject -> (Chinese name, category)
CEVAL_SUBJECTS: dict[str, tuple[str, str]] = {
    "computer_network": ("计算机网络", STEM),
    "operating_system": ("操作系统", STEM),
    "computer_architecture": ("计算机组成", STEM),
    "college_programming": ("大学编程", STEM),
    "college_physics": ("大学物理", STEM),
    "college_chemistry": ("大学化学", STEM),
    "advanced_mathematics": ("高等数学", STEM),
    "probability_and_statistics": ("概率统计", STEM),
    "discrete_mathematics": ("离散数学", STEM),
    "electrical_engineer": ("注册电气工程师", STEM),
    "metrology_engineer": ("注册计量师", STEM),
    "high_school_mathematics": ("高中数学", STEM),
    "high_school_physics": ("高中物理", STEM),
    "high_school_chemistry": ("高中化学", STEM),
    "high_school_biology": ("高中生物", STEM),
    "middle_school_mathematics": ("初中数学", STEM),
    "middle_school_biology": ("初中生物", STEM),
    "middle_school_physics": ("初中物理", STEM),
    "middle_school_chemistry": ("初中化学", STEM),
    "veterinary_medicine": ("兽医学", STEM),
    "college_economics": ("大学经济学", SOCIAL),
    "business_administration": ("工商管理", SOCIAL),
    "marxism": ("马克思主义基本原理", SOCIAL),
    "mao_zedong_thought": ("毛泽东思想和中国特色社会主义理论体系概论", SOCIAL),
    "education_science": ("教育学", SOCIAL),
    "teacher_qualification": ("教师资格", SOCIAL),
    "high_school_politics": ("高中政治", SOCIAL),
    "high_school_geography": ("高中地理", SOCIAL),
    "middle_school_politics": ("初中政治", SOCIAL),
    "middle_school_geography": ("初中地理", SOCIAL),
    "modern_chinese_history": ("近代史纲要", HUMANITIES),
    "ideological_and_moral_cultivation": ("思想道德修养与法律基础", HUMANITIES),
    "logic": ("逻辑学", HUMANITIES),
    "law": ("法学", HUMANITIES),
    "chinese_language_and_literature": ("中国语言文学", HUMANITIES),
    "art_studies": ("艺术学", HUMANITIES),
    "professional_tour_guide": ("导游资格", HUMANITIES),
    "legal_professional": ("法律职业资格", HUMANITIES),
    "high_school_chinese": ("高中语文", HUMANITIES),
    "high_school_history": ("高中历史", HUMANITIES),
    "middle_school_history": ("初中历史", HUMANITIES),
    "civil_servant": ("公务员", OTHER),
    "sports_science": ("体育学", OTHER),
    "plant_protection": ("植物保护", OTHER),
    "basic_medicine": ("基础医学", OTHER),
    "clinical_medicine": ("临床医学", OTHER),
    "urban_and_rural_planner": ("注册城乡规划师", OTHER),
    "accountant": ("注册会计师", OTHER),
    "fire_engineer": ("注册消防工程师", OTHER),
    "environmental_impact_assessment_engineer": ("环境影响评价工程师", OTHER),
    "tax_accountant": ("税务师", OTHER),
    "physician": ("医师资格", OTHER),
}

CEVAL_HARD = frozenset({
    "advanced_mathematics", "discrete_mathematics", "probability_and_statistics", "college_chemistry",
    "college_physics", "high_school_mathematics", "high_school_chemistry", "high_school_physics",
})

MMLU_SUBJECTS = (
    "abstract_algebra anatomy astronomy business_ethics clinical_knowledge college_biology college_chemistry "
    "college_computer_science college_mathematics college_medicine college_physics computer_security "
    "conceptual_physics econometrics electrical_engineering elementary_mathematics formal_logic global_facts "
    "high_school_biology high_school_chemistry high_school_computer_science high_school_european_history "
    "high_school_geography high_school_government_and_politics high_school_macroeconomics "
    "high_school_mathematics high_school_microeconomics high_school_physics high_school_psychology "
    "high_school_statistics high_school_us_history high_school_world_history human_aging human_sexuality "
    "international_law jurisprudence logical_fallacies machine_learning management marketing medical_genetics "
    "miscellaneous moral_disputes moral_scenarios nutrition philosophy prehistory professional_accounting "
    "professional_law professional_medicine professional_psychology public_relations security_studies "
    "sociology us_foreign_policy virology world_religions"
).split()

CMMLU_SUBJECTS = (
    "agronomy anatomy ancient_chinese arts astronomy business_ethics chinese_civil_service_exam "
    "chinese_driving_rule chinese_food_culture chinese_foreign_policy chinese_history chinese_literature "
    "chinese_teacher_qualification clinical_knowledge college_actuarial_science college_education "
    "college_engineering_hydrology college_law college_mathematics college_medical_statistics college_medicine "
    "computer_science computer_security conceptual_physics construction_project_management economics education "
    "electrical_engineering elementary_chinese elementary_commonsense elementary_information_and_technology "
    "elementary_mathematics ethnology food_science genetics global_facts high_school_biology "
    "high_school_chemistry high_school_geography high_school_mathematics high_school_physics "
    "high_school_politics human_sexuality international_law journalism jurisprudence legal_and_moral_basis "
    "logical machine_learning management marketing marxist_theory modern_chinese nutrition philosophy "
    "professional_accounting professional_law professional_medicine professional_psychology public_relations "
    "security_study sociology sports_science traditional_chinese_medicine virology world_history world_religions"
).split()


def ceval_categories(subject: str) -> list[str]:
    """The C-Eval categories a subject counts in: its own, plus "Hard" for the C-Eval-Hard eight."""
    if subject not in CEVAL_SUBJECTS:
        return []
    return [CEVAL_SUBJECTS[subject][1]] + (["Hard"] if subject in CEVAL_HARD else [])
